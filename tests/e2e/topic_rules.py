"""An authorizer for the end-to-end tests: public.* for anyone, staff.* for staff only."""


def staff_or_public(user, topic):
    if topic.startswith("staff."):
        return bool(getattr(user, "is_staff", False))
    return topic.startswith("public.") or topic.startswith("user.")

"""The benchmark's report: each ratio taken within one round, their median over rounds."""

from bench.run import ratios


def result(app: str, procs: int, round_number: int, cpu: float, rate: int, p99: float) -> dict:
    return {
        "server": "uvicorn",
        "app": app,
        "procs": procs,
        "round": round_number,
        "rounds": 3,
        "cpu_us_per_delivery": cpu,
        "deliveries_per_s": rate,
        "p99_ms": p99,
    }


def test_two_processes_are_compared_with_one_of_the_same_round_and_the_median_is_given():
    rows = [
        # Round 2 ran on a slower machine for both: its ratio is still 1.10x.
        result("hub", 1, 1, 1.0, 100, 10),
        result("hub", 2, 1, 1.2, 100, 10),
        result("hub", 1, 2, 2.0, 50, 10),
        result("hub", 2, 2, 2.2, 50, 10),
        result("hub", 1, 3, 1.0, 100, 10),
        result("hub", 2, 3, 1.5, 90, 10),
    ]
    (line,) = ratios(rows)
    assert "hub x2 / x1 CPU per delivery median 1.20x (1.20x, 1.10x, 1.50x)" in line
    assert "deliveries/s median 100% (100%, 100%, 90%)" in line


def test_with_an_idle_window_the_cost_above_idle_is_compared_too():
    rows = [
        # Each process costs 0.1 µs a delivery with nothing to send: the second one's
        # fixed cost is the whole difference.
        {**result("hub", 1, 1, 0.5, 100, 10), "cpu_above_idle_us_per_delivery": 0.4},
        {**result("hub", 2, 1, 0.6, 100, 10), "cpu_above_idle_us_per_delivery": 0.4},
    ]
    (line,) = ratios(rows)
    assert "hub x2 / x1 CPU per delivery 1.20x (above idle 1.00x)" in line


def test_one_round_gives_plain_ratios_against_the_raw_app():
    rows = [
        {**result("hub", 1, 1, 0.5, 300, 12), "rounds": 1},
        {**result("raw", 1, 1, 5.0, 100, 24), "rounds": 1},
    ]
    (line,) = ratios(rows)
    assert line == ("  uvicorn: hub/raw p99 0.50x, deliveries/s 300%, CPU per delivery 0.10x")


def test_the_idle_clock_counts_every_thread_to_the_scheduler_s_nanosecond():
    import os
    import threading
    import time

    from bench.run import tree_cpu_ns

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    spun, release = threading.Event(), threading.Event()

    def worker_body() -> None:
        spin(0.1)
        spun.set()
        release.wait()  # alive while counted: a finished thread is not

    before_ns, before_cpu = tree_cpu_ns([os.getpid()]), time.process_time()
    worker = threading.Thread(target=worker_body)
    worker.start()
    spin(0.1)
    spun.wait()
    counted = (tree_cpu_ns([os.getpid()]) - before_ns) / 1e9
    used = time.process_time() - before_cpu
    release.set()
    worker.join()
    # Both clocks see both threads' 0.2 s; /proc's ticks would be 10 ms apart at best.
    assert counted >= 0.19
    assert abs(counted - used) < 0.005

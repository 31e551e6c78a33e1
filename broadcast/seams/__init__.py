"""One module per library the hub reaches into (servers, layers), each with its probe."""

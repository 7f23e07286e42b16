"""The `ringlock` command: it parses, calls the library, prints; no logic of its own."""

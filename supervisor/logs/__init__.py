"""The log pipeline: capture a service's output, write it to rotating files, scan it for patterns,
echo it on qasup's stdout, and follow files that services write themselves.

Design goals (see the Logs section of the spec and spec/peers.md):

* byte for byte: output is handled as bytes from the pipe to the file; invalid UTF-8 and lines longer
  than any buffer are kept as they are;
* fast: big reads (up to 1 MiB) from an enlarged pipe, patterns scanned over whole chunks of complete
  lines with Hyperscan (Python `re` where Hyperscan is missing or rejects a pattern), Python work only
  where a pattern matched;
* bounded memory: an unterminated line is buffered up to `max_line` bytes only;
* never blocks a service: echo drops lines (and says so) instead of waiting on a slow stdout, a full
  disk loses log bytes (and says so once) instead of stopping the reader;
* zero CPU when idle: capture sleeps in epoll on the pipe, `follow` on an inotify descriptor.

Modules, one job each (this package imports none of them, so each costs only what it uses):

* `capture`  `make_pipe`, `capture` (a pipe drained to EOF into sinks);
* `scan`     `PatternSet` (one service's patterns, compiled once), `LineScanner` (one byte stream);
             what a pattern means, and its validation, live in `supervisor.config.patterns`;
* `rotate`   `RotatingFile`, `LogError`;
* `echo`     `Echo`, `EchoStream` (`name | line` on qasup's stdout);
* `tail`     `tail_lines` (the last lines of a log and its backup);
* `follow`   `follow` (a file a service writes itself), on `inotify` (ctypes binding) or watchfiles;
* `limits`   the sizes they share.

Wiring (done by the engine): `make_pipe()` gives the child its stdout+stderr; `capture(read_fd,
sinks=[rotating_file.write, scanner.feed, echo_stream.write], on_eof=[scanner.flush,
echo_stream.flush])`; for each tailed file `follow(path, other_scanner.feed)` with its own
`LineScanner` (one per byte stream: scanners keep a partial line) sharing the service's `PatternSet`.
"""

#!/usr/bin/env python3
"""pty_run.py OUT TTY CMD...: runs CMD with stderr on a pseudo-terminal (100
columns) and stdout on a pipe; writes what reached stdout to OUT and what
reached the terminal to TTY; exits with CMD's status."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

out_path, tty_path, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
os.close(slave)
out, tty = b"", b""
fds = {proc.stdout.fileno(): "out", master: "tty"}
while fds:
    ready, _, _ = select.select(list(fds), [], [], 60)
    if not ready:
        proc.kill()
        break
    for fd in ready:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            data = b""
        if not data:
            del fds[fd]
        elif fds[fd] == "out":
            out += data
        else:
            tty += data
rc = proc.wait()
with open(out_path, "wb") as f:
    f.write(out)
with open(tty_path, "wb") as f:
    f.write(tty)
sys.exit(rc)

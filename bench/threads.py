"""CPU time of a process's threads, by thread name, from /proc: for the benchmark scripts."""

import os

# sqlx runs each SQLite connection on a thread of its own, named `sqlx-sqlite-worker` (15
# characters of it in /proc): the gateway's store.
STORE_THREADS = "sqlx-sqlite"


def cpu_seconds(pid, prefix):
    """utime + stime, in seconds, of the threads of `pid` whose name starts with `prefix`
    (0 for a process that is gone or has none)."""
    ticks = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        # The name is in parentheses and may hold spaces: fields start after the last ')'.
        if not text[text.index("(") + 1 : text.rindex(")")].startswith(prefix):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # proc(5): utime and stime are fields 14 and 15 (1-based, counting pid and name).
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")

"""CPU time of a process and of its threads, by thread name, from /proc: for the benchmark
scripts."""

import os

# sqlx runs each SQLite connection on a thread of its own, named `sqlx-sqlite-worker` (15
# characters of it in /proc): the gateway's store.
STORE_THREADS = "sqlx-sqlite"

# tokio's threads (the runtime's workers and its blocking pool), as /proc names them.
RUNTIME_THREADS = "tokio-"

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_stat(path):
    """(name, fields after the name) of a /proc `stat` file, or None if it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    # The name is in parentheses and may hold spaces: fields start after the last ')'.
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def split_ticks(fields):
    """(utime, stime), in clock ticks, of the fields `read_stat` gives."""
    # proc(5): utime and stime are fields 14 and 15 (1-based, counting pid and name).
    return int(fields[11]), int(fields[12])


def cpu_ticks(fields):
    """utime + stime, in clock ticks, of the fields `read_stat` gives."""
    return sum(split_ticks(fields))


def parent_pid(fields):
    """The parent's pid, from the fields `read_stat` gives."""
    # proc(5): ppid is field 4 (1-based, counting pid and name).
    return int(fields[1])


def process_cpu_seconds(pid):
    """utime + stime of process `pid` (every thread it has had), in seconds."""
    return sum(process_cpu_split(pid))


def process_cpu_split(pid):
    """(utime, stime) of process `pid` (every thread it has had), in seconds."""
    stat = read_stat(f"/proc/{pid}/stat")
    if stat is None:
        raise OSError(f"process {pid} is gone")
    user, system = split_ticks(stat[1])
    return user / CLK_TCK, system / CLK_TCK


def cpu_split(pid, prefix):
    """(utime, stime), in seconds, of the threads of `pid` whose name starts with `prefix`
    ((0, 0) for a process that is gone or has none)."""
    user = system = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tids:
        stat = read_stat(f"/proc/{pid}/task/{tid}/stat")
        if stat is not None and stat[0].startswith(prefix):
            u, s = split_ticks(stat[1])
            user += u
            system += s
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pid, prefix):
    """utime + stime, in seconds, of the threads of `pid` whose name starts with `prefix`
    (0 for a process that is gone or has none)."""
    return sum(cpu_split(pid, prefix))


def sched_split(pid, prefix):
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of the threads of `pid` whose
    name starts with `prefix`, from the scheduler's own accounting (`/proc/.../schedstat`);
    None where the kernel does not keep it."""
    on_cpu = waiting = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        stat = read_stat(f"/proc/{pid}/task/{tid}/stat")
        if stat is None or not stat[0].startswith(prefix):
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ran, waited = (int(x) for x in f.read().split()[:2])
        except (OSError, ValueError):
            return None
        on_cpu += ran
        waiting += waited
    return on_cpu / 1e9, waiting / 1e9

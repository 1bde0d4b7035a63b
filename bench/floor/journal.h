/*
 * The floors' durable journal (`smtp.c`, `modems.c`): records appended to one file that was
 * written through once beforehand, as a database's log is before it is reused, so that a sync
 * flushes data only (space that is merely allocated would make each sync a file-system journal
 * commit as well, which no long-running store pays). `fdatasync` runs on a thread of its own,
 * so that the caller's event loop never waits for the disk: `journal_sync` starts one, and
 * `journal_done` (an eventfd for the caller's epoll) is readable when it has finished.
 */
#ifndef FLOOR_JOURNAL_H
#define FLOOR_JOURNAL_H

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int journal_fd = -1, journal_go[2], journal_done = -1;
static off_t journal_off;
static long journal_bytes;

static void *journal_syncer(void *arg) {
    (void)arg;
    char go;
    while (read(journal_go[0], &go, 1) == 1) {
        if (fdatasync(journal_fd) != 0) {
            perror("fdatasync");
            exit(1);
        }
        uint64_t one = 1;
        if (write(journal_done, &one, sizeof one) != sizeof one) exit(1);
    }
    return NULL;
}

/* Creates the journal at `path`, `bytes` long (a multiple of 1 MiB), and starts the syncer.
 * Returns 0, or -1 with errno set. */
static int journal_open(const char *path, long bytes) {
    journal_bytes = bytes;
    journal_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (journal_fd < 0) return -1;
    static char zeros[1 << 20];
    for (long done = 0; done < bytes; done += (long)sizeof zeros)
        if (write(journal_fd, zeros, sizeof zeros) != (ssize_t)sizeof zeros) return -1;
    if (fsync(journal_fd) != 0) return -1;
    journal_done = eventfd(0, EFD_NONBLOCK);
    pthread_t t;
    if (journal_done < 0 || pipe(journal_go) != 0) return -1;
    if (pthread_create(&t, NULL, journal_syncer, NULL) != 0) return -1;
    return 0;
}

/* Appends one record (wrapping around at the end: the journal is never read back). */
static void journal_append(const void *rec, size_t n) {
    off_t at = journal_off % (journal_bytes - (off_t)n);
    if (pwrite(journal_fd, rec, n, at) != (ssize_t)n) {
        perror("pwrite");
        exit(1);
    }
    journal_off = at + (off_t)n;
}

/* Starts a sync of everything appended so far; one must not be in flight already. */
static void journal_sync(void) {
    if (write(journal_go[1], "s", 1) != 1) exit(1);
}

#endif

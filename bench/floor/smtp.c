/*
 * The floor of durable SMTP intake on this machine: the least work any server must do for
 * `bench/intake`'s load, so that the benchmark can say how close a real server comes to it.
 *
 * It speaks just enough SMTP for smtp-source and the latency pass (EHLO/HELO, MAIL, RCPT, DATA,
 * RSET, NOOP, QUIT), parses nothing, and makes each mail durable as cheaply as it can be done:
 * appended to one journal file (written through once beforehand, as a database's log is) and
 * `fdatasync`ed before its `250`, one sync for every mail that arrived meanwhile (group commit),
 * on a thread of its own so that the event loop never waits for the disk. Nothing is kept in
 * memory or read back: this is a yardstick, not a mail server.
 *
 *     cc -O2 -pthread -o smtp-floor smtp.c && ./smtp-floor PORT JOURNAL
 *
 * On SIGTERM it prints the number of mails it made durable and exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "journal.h"

#define JOURNAL_BYTES (64L << 20)

typedef struct conn {
    int fd;
    int in_data;  /* between DATA's 354 and the final dot */
    int waiting;  /* a mail of this connection waits for its sync */
    int closed;   /* the client went away while it waited */
    char *buf;
    size_t len, cap;
} conn;

/* Mails appended but not yet handed to the syncer, and those whose sync is in flight. */
static conn **pending, **syncing;
static size_t npending, nsyncing, cap_batch = 1024;
static long durable;

static void reply(conn *c, const char *s) {
    /* Replies are a few bytes on a socket the client drains between commands: a short write
     * would be a broken client, and is not worth more code in a yardstick. */
    if (!c->closed && write(c->fd, s, strlen(s)) < 0) c->closed = 1;
}

static void drop(int ep, conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c);
}

static void start_sync(void) {
    if (nsyncing || !npending) return;
    conn **t = syncing;
    syncing = pending;
    nsyncing = npending;
    pending = t;
    npending = 0;
    journal_sync();
}

static void take_mail(conn *c, const char *mail, size_t n) {
    journal_append(mail, n);
    if (npending == cap_batch) {
        cap_batch *= 2;
        pending = realloc(pending, cap_batch * sizeof *pending);
        syncing = realloc(syncing, cap_batch * sizeof *syncing);
    }
    c->waiting = 1;
    pending[npending++] = c;
}

/* Handles what a connection sent; returns 0 when it asked to quit. */
static int serve(conn *c) {
    size_t pos = 0;
    int go_on = 1;
    while (pos < c->len) {
        char *start = c->buf + pos;
        size_t left = c->len - pos;
        if (c->in_data) {
            /* The mail ends at CRLF.CRLF (the DATA line's CRLF counts for an empty body). */
            char *end = memmem(start, left, "\r\n.\r\n", 5);
            if (!end) break;
            size_t n = (size_t)(end - start) + 5;
            take_mail(c, start, n);
            pos += n;
            c->in_data = 0;
            continue;
        }
        char *eol = memmem(start, left, "\r\n", 2);
        if (!eol) break;
        pos += (size_t)(eol - start) + 2;
        if (!strncasecmp(start, "EHLO", 4))
            reply(c, "250-floor\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n");
        else if (!strncasecmp(start, "DATA", 4)) {
            reply(c, "354 end with <CRLF>.<CRLF>\r\n");
            c->in_data = 1;
            pos -= 2; /* the CRLF before the first body line may end an empty body */
        } else if (!strncasecmp(start, "QUIT", 4)) {
            reply(c, "221 2.0.0 bye\r\n");
            go_on = 0;
            break;
        } else
            reply(c, "250 2.0.0 ok\r\n");
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    return go_on;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT JOURNAL\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Blocked in every thread (the syncer inherits the mask): read from a signalfd below. */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigprocmask(SIG_BLOCK, &term, NULL);
    if (journal_open(argv[2], JOURNAL_BYTES) != 0) {
        perror(argv[2]);
        return 1;
    }
    pending = malloc(cap_batch * sizeof *pending);
    syncing = malloc(cap_batch * sizeof *syncing);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0) {
        perror("listen");
        return 1;
    }
    int sigs = signalfd(-1, &term, 0);
    int ep = epoll_create1(0);
    /* data.ptr NULL: the listener; &journal_done, &sigs: the other fixed descriptors. */
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &e);
    e.data.ptr = &journal_done;
    epoll_ctl(ep, EPOLL_CTL_ADD, journal_done, &e);
    e.data.ptr = &sigs;
    epoll_ctl(ep, EPOLL_CTL_ADD, sigs, &e);
    struct epoll_event ev[256];
    for (;;) {
        int k = epoll_wait(ep, ev, 256, -1);
        if (k < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int j = 0; j < k; j++) {
            void *p = ev[j].data.ptr;
            if (p == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->cap = 16384;
                    c->buf = malloc(c->cap);
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                    reply(c, "220 floor ESMTP\r\n");
                }
            } else if (p == &sigs) {
                /* Anything still waiting was never answered: only the durable count matters. */
                printf("%ld\n", durable);
                return 0;
            } else if (p == &journal_done) {
                uint64_t n;
                if (read(journal_done, &n, sizeof n) != sizeof n) continue;
                for (size_t i = 0; i < nsyncing; i++) {
                    conn *c = syncing[i];
                    c->waiting = 0;
                    durable++;
                    if (c->closed)
                        drop(ep, c);
                    else
                        reply(c, "250 2.0.0 queued\r\n");
                }
                nsyncing = 0;
            } else {
                conn *c = p;
                if (c->cap - c->len < 8192) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r < 0 && errno == EAGAIN) continue;
                if (r <= 0 || !serve((c->len += (size_t)r, c))) {
                    c->closed = 1;
                    if (!c->waiting) drop(ep, c);
                    else epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                }
            }
        }
        start_sync();
    }
}

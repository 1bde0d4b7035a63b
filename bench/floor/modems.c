/*
 * The floor of driving GSM modems on this machine: the least work any gateway must do to send
 * `bench/modems`'s messages, so that the benchmark can say how close a real one comes to it.
 *
 * One event loop over the modems' terminals (raw mode, epoll) runs the AT+CMGS exchange of
 * every modem: `AT+CMGS=<length>`, the `> ` prompt, the PDU and Ctrl-Z, then `+CMGS: <mr>` and
 * `OK`. Each message is marked as being sent, durably, before its `AT+CMGS`, as invariant 3
 * asks of the gateway: a record appended to one journal file (written through once beforehand,
 * as a database's log is) and `fdatasync`ed, one sync for every modem ready meanwhile (group
 * commit), on a thread of its own so that the loop never waits for the disk; the record of each
 * `+CMGS` answer rides on the next sync. It reads no queue, parses no mail and keeps no
 * history: a yardstick, not a gateway.
 *
 *     cc -O2 -pthread -o modem-floor modems.c && ./modem-floor DIR MODEMS MESSAGES JOURNAL
 *
 * DIR holds the modems' terminals as DIR/modem0 .. modemN-1 (`mail2sms modem-sim --dir`).
 * Message i goes to +3361 followed by i in 7 digits, with the text "floor". It exits when every
 * message was answered (status 0) or when a modem answers an error or goes away (status 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <termios.h>
#include <unistd.h>

#include "journal.h"

#define JOURNAL_BYTES (16L << 20)

enum state { INIT, IDLE, MARKING, PROMPT, ANSWER };

typedef struct modem {
    int fd;
    enum state st;
    long msg;      /* the message it is sending */
    long mark_gen; /* the sync that makes its mark durable (see `started`) */
    char buf[1024];
    size_t len;
} modem;

static void note(const char *what, long msg, int modem_no) {
    char rec[96];
    int n = snprintf(rec, sizeof rec, "%s %ld modem%d\n", what, msg, modem_no);
    journal_append(rec, (size_t)n);
}

static void put(modem *m, const char *s, size_t n) {
    if (write(m->fd, s, n) != (ssize_t)n) {
        perror("write to a modem");
        exit(1);
    }
}

/* SMS-SUBMIT (TS 23.040 §9.2.2.2) to +3361<7 digits of msg>, relative validity, GSM 7-bit
 * "floor" (TS 23.038 packing), with the empty SMSC address in front: the TPDU is 19 octets. */
static size_t pdu(long msg, char *out) {
    char d[16];
    snprintf(d, sizeof d, "3361%07lu", (unsigned long)msg % 10000000UL);
    d[11] = 'F';
    char sw[13];
    for (int i = 0; i < 12; i += 2) {
        sw[i] = d[i + 1];
        sw[i + 1] = d[i];
    }
    sw[12] = 0;
    return (size_t)sprintf(out, "0011000B91%s0000AA0566F6FB2D07\x1a", sw);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR MODEMS MESSAGES JOURNAL\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    long total = atol(argv[3]);
    if (n <= 0 || journal_open(argv[4], JOURNAL_BYTES) != 0) {
        perror(argv[4]);
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)n};
    epoll_ctl(ep, EPOLL_CTL_ADD, journal_done, &e);
    modem *m = calloc((size_t)n, sizeof *m);
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/modem%d", argv[1], i);
        m[i].fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);
        if (m[i].fd < 0) {
            perror(path);
            return 1;
        }
        struct termios tio;
        if (tcgetattr(m[i].fd, &tio) == 0) {
            cfmakeraw(&tio);
            tcsetattr(m[i].fd, TCSANOW, &tio);
        }
        e.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, m[i].fd, &e);
        put(&m[i], "ATE0\r", 5);
    }
    long next = 0, answered = 0;
    /* Syncs started and finished so far: a mark written while sync k is in flight is made
     * durable by sync k + 1 only. */
    long started = 0, finished = 0;
    int marked = 0; /* marks written since the last sync started */
    struct epoll_event ev[64];
    char out[64];
    while (answered < total) {
        int k = epoll_wait(ep, ev, 64, -1);
        if (k < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int j = 0; j < k; j++) {
            uint32_t i = ev[j].data.u32;
            if ((int)i == n) {
                uint64_t c;
                if (read(journal_done, &c, sizeof c) != sizeof c) continue;
                finished = started;
                for (int x = 0; x < n; x++) {
                    if (m[x].st != MARKING || m[x].mark_gen > finished) continue;
                    int l = snprintf(out, sizeof out, "AT+CMGS=19\r");
                    put(&m[x], out, (size_t)l);
                    m[x].st = PROMPT;
                }
                continue;
            }
            modem *x = &m[i];
            ssize_t r = read(x->fd, x->buf + x->len, sizeof x->buf - 1 - x->len);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                fprintf(stderr, "modem%u went away\n", i);
                return 1;
            }
            x->len += (size_t)r;
            x->buf[x->len] = 0;
            if (strstr(x->buf, "ERROR")) {
                fprintf(stderr, "modem%u: %s\n", i, x->buf);
                return 1;
            }
            if (x->st == INIT && strstr(x->buf, "OK\r\n")) {
                x->len = 0;
                x->st = IDLE;
            } else if (x->st == PROMPT && strstr(x->buf, "> ")) {
                x->len = 0;
                size_t l = pdu(x->msg, out);
                put(x, out, l);
                x->st = ANSWER;
            } else if (x->st == ANSWER && strstr(x->buf, "+CMGS:") && strstr(x->buf, "OK\r\n")) {
                x->len = 0;
                note("sent", x->msg, (int)i);
                answered++;
                x->st = IDLE;
            } else if (x->len > sizeof x->buf / 2) {
                x->len = 0; /* unsolicited chatter */
            }
        }
        /* Every idle modem takes the next message: marked now, sent after the next sync. */
        for (int x = 0; x < n && next < total; x++) {
            if (m[x].st != IDLE) continue;
            m[x].msg = next++;
            m[x].st = MARKING;
            m[x].mark_gen = started + 1;
            note("sending", m[x].msg, x);
            marked++;
        }
        if (marked && started == finished) {
            journal_sync();
            started++;
            marked = 0;
        }
    }
    return 0;
}

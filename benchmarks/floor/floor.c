/*
 * floor.c — the kernel's cost of WebSocket fan-out: the floor chathub is measured against.
 *
 * A minimal single-threaded epoll server (part of chathub's fan-out benchmark,
 * benchmarks/bench_fanout.py; compiled with `cc -O2` at benchmark time):
 *
 *   - accepts TCP connections and answers the WebSocket upgrade (RFC 6455: SHA-1 +
 *     base64 of the key); the room is the `room=` query parameter of the request path;
 *   - every complete text frame a client sends is a "publish": the server builds the
 *     server frame ONCE (2- or 4-byte header + the unmasked payload) and writes that same
 *     buffer to every other connection of the room;
 *   - unbatched mode (default): one send() per recipient per message;
 *   - batched mode (--batch 16): frames of a room are appended to one room buffer and
 *     written with one send() per recipient when 16 are pending (or when the oldest has
 *     waited --flush-ms, so that a run's tail is delivered too).
 *
 * Nothing else: no JSON, no auth, no per-connection state but a leftover buffer for the
 * rare short write. What it costs per delivery is what the kernel costs (the send()
 * syscall plus loopback TCP, including the receiving side's softirq work that runs on
 * the sender's CPU).
 *
 * Usage: floor PORT [--batch N] [--flush-ms MS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROOMS 65536
#define MAX_BATCH 64
#define RBUF 16384

/* ------------------------------------------------------------------ SHA-1 (FIPS 180-4) */

typedef struct { uint32_t h[5]; uint64_t len; uint8_t buf[64]; size_t n; } sha1_ctx;

static uint32_t rol(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void sha1_block(sha1_ctx *c, const uint8_t *p) {
    uint32_t w[80], a, b, d, e, f, k, t, cc;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3]; e = c->h[4];
    for (int i = 0; i < 80; i++) {
        if (i < 20) { f = (b & cc) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ cc ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & cc) | (b & d) | (cc & d); k = 0x8F1BBCDC; }
        else { f = b ^ cc ^ d; k = 0xCA62C1D6; }
        t = rol(a, 5) + f + e + k + w[i];
        e = d; d = cc; cc = rol(b, 30); b = a; a = t;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e;
}

static void sha1(const uint8_t *data, size_t len, uint8_t out[20]) {
    sha1_ctx c = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    c.len = (uint64_t)len * 8;
    while (len >= 64) { sha1_block(&c, data); data += 64; len -= 64; }
    uint8_t tail[128] = {0};
    memcpy(tail, data, len);
    tail[len] = 0x80;
    size_t tl = (len + 9 <= 64) ? 64 : 128;
    for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (uint8_t)(c.len >> (8 * i));
    sha1_block(&c, tail);
    if (tl == 128) sha1_block(&c, tail + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = c.h[i] >> 24; out[4 * i + 1] = c.h[i] >> 16; out[4 * i + 2] = c.h[i] >> 8; out[4 * i + 3] = c.h[i];
    }
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ connections, rooms */

typedef struct conn {
    int fd;
    int room;          /* -1 until upgraded */
    int idx;           /* position in its room's member array */
    size_t rlen;       /* bytes in rbuf */
    uint8_t *rbuf;     /* request / frame reassembly */
    uint8_t *out;      /* leftover of a short write */
    size_t outlen;
} conn;

typedef struct room {
    conn **m;
    int n, cap;
    uint8_t *batch;    /* batched mode: pending frames */
    size_t blen, bcap;
    int bcount;
    conn *bsender;     /* the sender of every pending frame (a batch has one sender) */
    double bsince;     /* time of the oldest pending frame */
} room;

static room rooms[MAX_ROOMS];
static int epfd;
static int batch_n = 1;
static int max_room = 0;
static double flush_s = 2.0;
static unsigned long long n_short = 0, n_deliveries = 0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void conn_free(conn *c) {
    if (c->room >= 0) {
        room *r = &rooms[c->room];
        int i = c->idx;
        r->m[i] = r->m[--r->n];
        r->m[i]->idx = i;
        if (r->bsender == c) r->bsender = NULL;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->rbuf);
    free(c->out);
    free(c);
}

static void queue_out(conn *c, const uint8_t *p, size_t n) {
    c->out = realloc(c->out, c->outlen + n);
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* one send() of buf to c (or queue it behind a pending leftover) */
static void write_to(conn *c, const uint8_t *buf, size_t n) {
    if (c->outlen) { queue_out(c, buf, n); return; }
    ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == (ssize_t)n) return;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* peer gone: the read side cleans up */
        w = 0;
    }
    n_short++;
    queue_out(c, buf + w, n - (size_t)w);
}

static void flush_batch(room *r) {
    if (!r->bcount) return;
    for (int i = 0; i < r->n; i++)
        if (r->m[i] != r->bsender) { write_to(r->m[i], r->batch, r->blen); n_deliveries += r->bcount; }
    r->blen = 0; r->bcount = 0; r->bsender = NULL;
}

static void publish(conn *from, const uint8_t *payload, size_t n) {
    static uint8_t *frame = NULL;
    static size_t fcap = 0;
    size_t hl = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    if (fcap < n + hl) { fcap = n + hl; frame = realloc(frame, fcap); }
    frame[0] = 0x81; /* FIN + text */
    if (hl == 2) frame[1] = (uint8_t)n;
    else if (hl == 4) { frame[1] = 126; frame[2] = n >> 8; frame[3] = n & 255; }
    else { frame[1] = 127; for (int i = 0; i < 8; i++) frame[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i)); }
    memcpy(frame + hl, payload, n);
    room *r = &rooms[from->room];
    if (batch_n <= 1) {
        for (int i = 0; i < r->n; i++)
            if (r->m[i] != from) { write_to(r->m[i], frame, n + hl); n_deliveries++; }
        return;
    }
    if (r->bcount && r->bsender != from) flush_batch(r); /* a batch has a single sender */
    if (r->bcap < r->blen + n + hl) { r->bcap = (r->blen + n + hl) * 2; r->batch = realloc(r->batch, r->bcap); }
    memcpy(r->batch + r->blen, frame, n + hl);
    r->blen += n + hl;
    if (!r->bcount++) r->bsince = now_s();
    r->bsender = from;
    if (r->bcount >= batch_n) flush_batch(r);
}

static int parse_room(const char *req) {
    const char *p = strstr(req, "room=");
    const char *eol = strstr(req, "\r\n");
    if (!p || (eol && p > eol)) return 0;
    long v = strtol(p + 5, NULL, 10);
    return v < 0 || v >= MAX_ROOMS ? 0 : (int)v;
}

static int handshake(conn *c) {
    uint8_t *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) return c->rlen < RBUF - 1 ? 0 : -1;
    size_t hlen = (size_t)(end - c->rbuf) + 4;
    c->rbuf[hlen - 1] = 0;
    const char *req = (const char *)c->rbuf;
    const char *k = strcasestr(req, "\r\nSec-WebSocket-Key:");
    if (!k) return -1;
    k += 20;
    while (*k == ' ') k++;
    char key[128];
    size_t kl = 0;
    while (k[kl] && k[kl] != '\r' && kl < 60) { key[kl] = k[kl]; kl++; }
    memcpy(key + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    uint8_t dig[20];
    sha1((const uint8_t *)key, kl + 36, dig);
    char acc[32];
    base64(dig, 20, acc);
    char resp[256];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
    if (send(c->fd, resp, rl, MSG_NOSIGNAL) != rl) return -1;
    c->room = parse_room(req);
    if (c->room > max_room) max_room = c->room;
    room *r = &rooms[c->room];
    if (r->n == r->cap) { r->cap = r->cap ? r->cap * 2 : 16; r->m = realloc(r->m, sizeof(conn *) * r->cap); }
    c->idx = r->n;
    r->m[r->n++] = c;
    memmove(c->rbuf, c->rbuf + hlen, c->rlen - hlen);
    c->rlen -= hlen;
    return 1;
}

/* parse complete client frames in rbuf; returns -1 to close */
static int frames(conn *c) {
    size_t off = 0;
    while (c->rlen - off >= 2) {
        uint8_t *p = c->rbuf + off;
        int op = p[0] & 15, masked = p[1] >> 7;
        uint64_t n = p[1] & 127;
        size_t h = 2;
        if (n == 126) { if (c->rlen - off < 4) break; n = (uint64_t)p[2] << 8 | p[3]; h = 4; }
        else if (n == 127) { if (c->rlen - off < 10) break; n = 0; for (int i = 0; i < 8; i++) n = n << 8 | p[2 + i]; h = 10; }
        if (n > RBUF - 16) return -1;
        size_t need = h + (masked ? 4 : 0) + n;
        if (c->rlen - off < need) break;
        uint8_t *pl = p + h + (masked ? 4 : 0);
        if (masked) { uint8_t *m = p + h; for (uint64_t i = 0; i < n; i++) pl[i] ^= m[i & 3]; }
        if (op == 8) return -1;                              /* close */
        if (op == 9) {                                       /* ping: pong */
            uint8_t hdr[2] = {0x8A, (uint8_t)(n < 126 ? n : 0)};
            write_to(c, hdr, 2);
            if (n < 126) write_to(c, pl, n);
        } else if (op == 1 || op == 2) {
            publish(c, pl, n);
        }
        off += need;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return 0;
}

static void on_readable(conn *c) {
    for (;;) {
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, RBUF - 1 - c->rlen, 0);
        if (r == 0) { conn_free(c); return; }
        if (r < 0) { if (errno == EAGAIN || errno == EWOULDBLOCK) return; conn_free(c); return; }
        c->rlen += (size_t)r;
        if (c->room < 0) {
            int h = handshake(c);
            if (h < 0) { conn_free(c); return; }
            if (h == 0) continue;
        }
        if (frames(c) < 0) { conn_free(c); return; }
    }
}

/* returns 0 if c was freed */
static int on_writable(conn *c) {
    while (c->outlen) {
        ssize_t w = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) { if (errno == EAGAIN || errno == EWOULDBLOCK) return 1; conn_free(c); return 0; }
        memmove(c->out, c->out + w, c->outlen - (size_t)w);
        c->outlen -= (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 1;
}

static volatile sig_atomic_t stop = 0;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [--batch N] [--flush-ms MS]\n", argv[0]); return 2; }
    int port = atoi(argv[1]);
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch")) batch_n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--flush-ms")) flush_s = atof(argv[i + 1]) / 1000.0;
    }
    if (batch_n > MAX_BATCH) batch_n = MAX_BATCH;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("bind/listen"); return 1; }
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
    printf("floor listening on 127.0.0.1:%d (batch %d)\n", port, batch_n);
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stop) {
        int timeout = batch_n > 1 ? 20 : 1000;
        int n = epoll_wait(epfd, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd; nc->room = -1; nc->rbuf = malloc(RBUF);
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && !on_writable(c)) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
        if (batch_n > 1) {
            double t = now_s();
            for (int r = 0; r <= max_room; r++)
                if (rooms[r].bcount && t - rooms[r].bsince >= flush_s) flush_batch(&rooms[r]);
        }
    }
    fprintf(stderr, "floor: %llu deliveries, %llu short writes\n", n_deliveries, n_short);
    return 0;
}

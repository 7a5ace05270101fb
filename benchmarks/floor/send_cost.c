/*
 * send_cost.c: CPU time of one small loopback send() as a fan-out server pays it, and
 * how it grows when the sender touches cold memory of its own per recipient (as any
 * server does: its connection objects) or has a second thread. It explains the gap
 * between the C floor of bench_fanout.py and servers that keep per-connection objects.
 *
 *   cc -O2 -o send_cost benchmarks/floor/send_cost.c -lpthread
 *   ./send_cost CONNS ROUNDS THREAD PORT [LINES [STRIDE]]
 *   e.g. for k in 0 6 24; do ./send_cost 1000 300 0 31000 $k; done
 *
 * A sink process pinned to CPU 1 accepts CONNS loopback connections and reads them;
 * the sender, pinned to CPU 0, writes one 190-byte message to each connection in turn,
 * ROUNDS times with 20 ms between rounds (like scenario a's 50 messages a second).
 * Before each send it reads and writes LINES cache lines of a per-recipient block of
 * STRIDE bytes (default 4096: one page per recipient). THREAD=1 starts an idle second
 * thread first (a multi-threaded process takes references on files in fdget()).
 * Prints the sender's CPU time (user + system, getrusage) per send. 127.0.0.1 only;
 * it ends by itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void *idle(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void sink(int ls, int n) {
    static char buf[65536];
    struct epoll_event ev[1024];
    int ep = epoll_create1(0);
    pin(1);
    for (int i = 0; i < n; i++) {
        int c = accept(ls, NULL, NULL);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
    }
    for (;;) {
        int k = epoll_wait(ep, ev, 1024, -1);
        for (int i = 0; i < k; i++)
            if (read(ev[i].data.fd, buf, sizeof buf) <= 0) _exit(0);
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s CONNS ROUNDS THREAD PORT [LINES [STRIDE]]\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), rounds = atoi(argv[2]), thread = atoi(argv[3]), port = atoi(argv[4]);
    int lines = argc > 5 ? atoi(argv[5]) : 0;
    int stride = argc > 6 ? atoi(argv[6]) : 4096;
    if (n < 1 || rounds < 1 || lines < 0 || stride < 64 || lines * 64 > stride) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) {
        perror("bind/listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) sink(ls, n);
    pin(0);
    int *fd = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd[i], (struct sockaddr *)&a, sizeof a)) {
            perror("connect");
            kill(child, SIGKILL);
            return 1;
        }
        setsockopt(fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (thread) {
        pthread_t t;
        pthread_create(&t, NULL, idle, NULL);
    }
    volatile char *pool = calloc((size_t)n * stride, 1);
    char msg[190];
    memset(msg, 'x', sizeof msg);
    struct timespec gap = {0, 20000000};
    unsigned long acc = 0;
    usleep(200000);
    double c0 = cpu_seconds();
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < lines; j++) {
                acc += pool[(size_t)i * stride + j * 64];
                pool[(size_t)i * stride + j * 64] = (char)r;
            }
            send(fd[i], msg, sizeof msg, MSG_NOSIGNAL);
        }
        nanosleep(&gap, NULL);
    }
    double c1 = cpu_seconds();
    printf("%s lines=%d %.3f us/send%s\n", thread ? "two threads" : "one thread", lines,
           (c1 - c0) * 1e6 / ((double)n * rounds), acc == 42 ? " " : "");
    for (int i = 0; i < n; i++) close(fd[i]);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}

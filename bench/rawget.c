/* rawget: a lean HTTP/1.1 GET client for benchmarks (1 MiB reads, body discarded).
 * Usage: rawget HOST PORT PATH [MB_PER_S]  -> prints the bytes of body received.
 * With MB_PER_S, reads are paced to that rate (a client behind a slower link).
 * Build: gcc -O2 -o rawget bench/rawget.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: rawget HOST PORT PATH [MB_PER_S]\n"); return 2; }
    double rate = argc == 5 ? atof(argv[4]) * 1e6 : 0, t0 = now();
    long long total = 0;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect"); return 1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
        "GET %s HTTP/1.1\r\nHost: %s\r\nX-Auth-Token: noauth\r\nConnection: close\r\n\r\n", argv[3], argv[1]);
    if (write(s, req, (size_t)n) != n) { perror("write"); return 1; }
    static char buf[1 << 20];
    long long body = -1;
    ssize_t r;
    char head[8192]; size_t hl = 0;
    while ((r = read(s, buf, sizeof buf)) > 0) {
        total += r;
        if (rate > 0) {
            double ahead = (double)total / rate - (now() - t0);
            if (ahead > 0) usleep((useconds_t)(ahead * 1e6));
        }
        if (body < 0) {
            size_t take = (size_t)r < sizeof head - hl ? (size_t)r : sizeof head - hl;
            memcpy(head + hl, buf, take); hl += take;
            char *end = memmem(head, hl, "\r\n\r\n", 4);
            if (!end) continue;
            size_t hlen = (size_t)(end - head) + 4;
            body = (long long)(hl - hlen) + ((long long)r - (long long)take);
        } else {
            body += r;
        }

    }
    printf("%lld\n", body < 0 ? 0 : body);
    close(s);
    return 0;
}

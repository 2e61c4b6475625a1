/* pipe_floor N: N one-byte round trips between two processes over two pipes;
   prints the mean microseconds per round trip. The floor under any pool. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

/* One round trip: a byte out, the echo back. 1 if both moved, 0 otherwise. */
static int trip(int out, int in) {
    char c = 'x';
    return write(out, &c, 1) == 1 && read(in, &c, 1) == 1;
}

/* Exit 0 after printing the mean; 2 if the pipes or the fork fail, 3 if a trip does. */
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000, i;
    int call[2], reply[2];
    struct timespec t0, t1;
    pid_t pid;
    char c;
    if (n < 1 || pipe(call) || pipe(reply)) return 2;
    pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        close(call[1]); close(reply[0]);
        while (read(call[0], &c, 1) == 1 && write(reply[1], &c, 1) == 1) {}
        _exit(0);
    }
    close(call[0]); close(reply[1]);
    for (i = 0; i < n / 10 + 1; i++) if (!trip(call[1], reply[0])) return 3;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; i++) if (!trip(call[1], reply[0])) return 3;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(call[1]);
    waitpid(pid, NULL, 0);
    printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1e3);
    return 0;
}

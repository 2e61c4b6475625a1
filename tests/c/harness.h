/*
 * harness.h - the very small test harness the C test programs share
 * (test_core.c, test_arena.c): CHECK/CHECK_EQ, an fd count, and
 * HARNESS_MAIN(TESTS), the runner.
 *
 * A test is `static void test_NAME(void)`; a file lists its tests as
 * `#define TESTS(X) X(name1) X(name2) ...` and ends with HARNESS_MAIN(TESTS).
 * The program runs every test (no arguments), only the named ones, or lists
 * them (--list); each test also fails if it leaves an fd open. Exit status:
 * 0 when every test asked for passed.
 */
#ifndef PX_TEST_HARNESS_H
#define PX_TEST_HARNESS_H

#include <dirent.h>
#include <stdio.h>
#include <string.h>

static int failed;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__,     \
                    __LINE__, __func__, #cond);                            \
            failed = 1;                                                    \
            return;                                                        \
        }                                                                  \
    } while (0)

#define CHECK_EQ(a, b)                                                     \
    do {                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                \
        if (a_ != b_) {                                                    \
            fprintf(stderr, "%s:%d: %s: %s == %s failed: %lld != %lld\n",  \
                    __FILE__, __LINE__, __func__, #a, #b, a_, b_);         \
            failed = 1;                                                    \
            return;                                                        \
        }                                                                  \
    } while (0)

static int t_count_fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) dir = opendir("/dev/fd");
    if (dir == NULL) return -1;
    int n = 0;
    while (readdir(dir) != NULL) n++;
    closedir(dir);
    return n;
}

struct t_entry {
    const char *name;
    void (*fn)(void);
};

/* Run tests[i]; 1 if it failed or left an fd open. */
static int t_run(const struct t_entry *t) {
    int fds = t_count_fds();
    failed = 0;
    t->fn();
    int left = t_count_fds();
    if (!failed && left != fds) {
        fprintf(stderr, "%s: left %d fd(s) open\n", t->name, left - fds);
        failed = 1;
    }
    printf("%s %s\n", failed ? "FAIL" : "ok  ", t->name);
    fflush(stdout);
    return failed;
}

static int t_main(const struct t_entry *tests, int ntests, int argc, char **argv) {
    int bad = 0, ran = 0;
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < ntests; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc == 1) {
        for (int i = 0; i < ntests; i++, ran++) bad += t_run(&tests[i]);
    }
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int i = 0; i < ntests; i++) {
            if (strcmp(argv[a], tests[i].name) == 0) {
                bad += t_run(&tests[i]);
                ran++;
                found = 1;
            }
        }
        if (!found) {
            fprintf(stderr, "no test named %s\n", argv[a]);
            bad++;
        }
    }
    printf("%d of %d test(s) passed\n", ran - bad, ran);
    return bad ? 1 : 0;
}

#define T_ENTRY(name) {#name, test_##name},
#define HARNESS_MAIN(TESTS)                                                \
    static const struct t_entry t_tests[] = {TESTS(T_ENTRY)};              \
    int main(int argc, char **argv) {                                      \
        return t_main(t_tests, (int)(sizeof(t_tests) / sizeof(t_tests[0])), \
                      argc, argv);                                         \
    }

#endif

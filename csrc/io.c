/*
 * io.c - pipes, resident memory, identity.
 */
#include "pyexec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#ifdef __APPLE__
#include <mach/mach.h>
#endif
#ifdef __linux__
#include <sys/prctl.h>
#endif

#ifndef PX_BUILD_STAMP
#define PX_BUILD_STAMP "unknown"
#endif

static int set_flag(int fd, int getcmd, int setcmd, int flag) {
    int cur = fcntl(fd, getcmd);
    if (cur < 0) return -errno;
    if (fcntl(fd, setcmd, cur | flag) < 0) return -errno;
    return 0;
}

int px_pipe(int fds[2], int nonblock, int size) {
    int p[2];
    int rc = 0;
#ifdef __linux__
    if (pipe2(p, O_CLOEXEC) < 0) return -errno;
#else
    /* No pipe2 on macOS: a fork between pipe() and FD_CLOEXEC could leak the
     * ends into a child; pyexec forks only from threads it controls. */
    if (pipe(p) < 0) return -errno;
    if ((rc = set_flag(p[0], F_GETFD, F_SETFD, FD_CLOEXEC)) < 0) goto out;
    if ((rc = set_flag(p[1], F_GETFD, F_SETFD, FD_CLOEXEC)) < 0) goto out;
#endif
    if ((nonblock & 1) && (rc = set_flag(p[0], F_GETFL, F_SETFL, O_NONBLOCK)) < 0)
        goto out;
    if ((nonblock & 2) && (rc = set_flag(p[1], F_GETFL, F_SETFL, O_NONBLOCK)) < 0)
        goto out;
#if defined(__linux__) && defined(F_SETPIPE_SZ)
    /* Best effort: the limit (/proc/sys/fs/pipe-max-size) may refuse it. */
    if (size > 0) (void)fcntl(p[1], F_SETPIPE_SZ, size);
#else
    (void)size;
#endif
    fds[0] = p[0];
    fds[1] = p[1];
    return 0;
out:
    close(p[0]);
    close(p[1]);
    return rc;
}

int64_t px_rss(void) {
#if defined(__linux__)
    char buf[128];
    int64_t rc;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0) {
        rc = n < 0 ? -errno : -EIO;
        goto out;
    }
    buf[n] = '\0';
    unsigned long long size = 0, resident = 0;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2) {
        rc = -EIO;
        goto out;
    }
    rc = (int64_t)resident * (int64_t)sysconf(_SC_PAGESIZE);
out:
    close(fd);
    return rc;
#elif defined(__APPLE__)
    struct mach_task_basic_info info;
    mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
    if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, (task_info_t)&info,
                  &count) != KERN_SUCCESS)
        return -EIO;
    return (int64_t)info.resident_size;
#else
    return -ENOSYS;
#endif
}

int px_parent_death_signal(int sig, int expected_ppid) {
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) < 0) return -errno;
    if (getppid() != (pid_t)expected_ppid) return -ESRCH;
    return 0;
#else
    (void)sig;
    (void)expected_ppid;
    return -ENOSYS;
#endif
}

int px_core_abi(void) { return PX_CORE_ABI; }

const char *px_build_stamp(void) { return PX_BUILD_STAMP; }

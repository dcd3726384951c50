/* dblock.c — the database's exclusive lock (see dblock.h). */
#include "server/store/dblock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Open (or create) path and lock it; 1 when locked, 0 when the name moved to another
 * inode meanwhile (try again), -1 + err. */
static int lock_once(ts_dblock *l, const char *path, char *err, size_t errlen) {
    int created = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        created = fd >= 0;
        if (fd < 0 && errno == EEXIST)
            return 0; /* created by someone else just now */
    }
    if (fd < 0) {
        snprintf(err, errlen, "database %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            snprintf(err, errlen, "database %s is in use by another tscaled (it holds the "
                     "database's lock); stop that daemon first, or give this one its own --db",
                     path);
        else
            snprintf(err, errlen, "database %s: cannot lock: %s", path, strerror(e));
        return -1;
    }
    struct stat a, b;
    if (fstat(fd, &a) < 0 || stat(path, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
        close(fd); /* renamed or replaced after open: lock what the name means now */
        return 0;
    }
    l->fd = fd;
    l->created = created;
    return 1;
}

int ts_dblock_acquire(ts_dblock *l, const char *path, char *err, size_t errlen) {
    l->fd = -1;
    l->created = 0;
    for (int attempt = 0; attempt < 100; attempt++) {
        int rc = lock_once(l, path, err, errlen);
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
    snprintf(err, errlen, "database %s keeps being replaced while tscaled locks it", path);
    return -1;
}

void ts_dblock_release(ts_dblock *l, const char *path, int discard) {
    if (l->fd < 0)
        return;
    if (discard && l->created) {
        static const char *const suffixes[] = {"-wal", "-shm", "-journal"};
        char side[4096];
        for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
            if (snprintf(side, sizeof side, "%s%s", path, suffixes[i]) < (int)sizeof side)
                unlink(side);
        unlink(path);
    }
    close(l->fd); /* drops the lock */
    l->fd = -1;
}

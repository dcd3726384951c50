/* dblock.h — one daemon per database.
 *
 * Two daemons on one database each adapt their own copy of a model and snapshot over each
 * other; a restart then loses steps that were acknowledged. So `serve` takes an exclusive
 * flock(2) on the database file before SQLite opens it for writing, and a second daemon
 * (or a second `serve` by mistake) stops with a message instead. flock locks are
 * independent of the POSIX locks SQLite uses, so `tscaled backup` and sqlite3 readers
 * still work; the kernel drops the lock when the process ends, however it ends.
 *
 * The lock is on the file's inode, so after locking, the path must still name that inode
 * (the directory entry): a database renamed or replaced between open and lock would
 * otherwise let two daemons each lock "their" file under one name. Local file systems
 * only (on NFS, flock is emulated with POSIX locks and would mix with SQLite's).
 *
 * The descriptor stays open until after the store is closed: closing any descriptor of
 * the database file would drop SQLite's own POSIX locks in this process.
 */
#ifndef TS_DBLOCK_H
#define TS_DBLOCK_H

#include <stddef.h>

typedef struct {
    int fd;        /* -1 when not held */
    int created;   /* the database file did not exist: this start created it (empty) */
} ts_dblock;

/* Lock path for this process, creating an empty file (mode 0600) when none exists.
 * 0, or -1 + err (another daemon holds it; or the file cannot be opened). */
int ts_dblock_acquire(ts_dblock *l, const char *path, char *err, size_t errlen);

/* Unlock and close. With discard and l->created, the start failed: remove the database
 * file this start created (and SQLite's -wal/-shm/-journal beside it), so that a failed
 * start leaves nothing behind. Call after the store is closed. */
void ts_dblock_release(ts_dblock *l, const char *path, int discard);

#endif

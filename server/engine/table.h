/* table.h — a chained hash table of intrusive nodes keyed by a 64-bit hash: the loop's
 * in-memory tables by (model, id) — the exactly-once records (idem.c) and the stored inputs
 * of the feedback window (window.c) — share it rather than each growing its own.
 *
 * A record embeds a ts_table_node as its FIRST member (so a node pointer is the record's);
 * the table links and unlinks nodes but never allocates or frees records: their owner does.
 * The buckets double when the table holds as many nodes as buckets, so chains stay short;
 * when that allocation fails the table keeps its buckets (longer chains, still correct).
 * Not thread-safe: each table belongs to one thread (here, the loop).
 */
#ifndef TS_TABLE_H
#define TS_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ts_table_node {
    uint64_t key;
    struct ts_table_node *chain;  /* next node of the same bucket */
} ts_table_node;

typedef struct {
    ts_table_node **buckets;
    size_t n_buckets;
    size_t count;                 /* nodes linked */
} ts_table;

/* An empty table with n_buckets (> 0) buckets: 0, or -1 when out of memory. */
int ts_table_init(ts_table *t, size_t n_buckets);
/* Free the buckets (the records are the caller's). */
void ts_table_free(ts_table *t);
/* Link n (its key set); grows first when full. */
void ts_table_insert(ts_table *t, ts_table_node *n);
/* Unlink n (it must be linked). */
void ts_table_remove(ts_table *t, ts_table_node *n);
/* The first node of key's bucket, or NULL: follow ->chain and compare the key and the
 * record's own identity (different keys share buckets, and keys can collide). */
ts_table_node *ts_table_bucket(const ts_table *t, uint64_t key);

#endif

/* table.c — the intrusive chained hash table (see table.h). */
#include "server/engine/table.h"

#include <stdlib.h>

int ts_table_init(ts_table *t, size_t n_buckets) {
    t->buckets = calloc(n_buckets, sizeof *t->buckets);
    t->n_buckets = t->buckets ? n_buckets : 0;
    t->count = 0;
    return t->buckets ? 0 : -1;
}

void ts_table_free(ts_table *t) {
    free(t->buckets);
    t->buckets = NULL;
    t->n_buckets = t->count = 0;
}

/* Double the buckets when there are as many nodes, so chains stay short. */
static void grow(ts_table *t) {
    if (t->count < t->n_buckets)
        return;
    size_t n = t->n_buckets * 2;
    ts_table_node **b = calloc(n, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->n_buckets; i++)
        for (ts_table_node *x = t->buckets[i], *next; x; x = next) {
            next = x->chain;
            x->chain = b[x->key % n];
            b[x->key % n] = x;
        }
    free(t->buckets);
    t->buckets = b;
    t->n_buckets = n;
}

void ts_table_insert(ts_table *t, ts_table_node *n) {
    grow(t);
    size_t b = n->key % t->n_buckets;
    n->chain = t->buckets[b];
    t->buckets[b] = n;
    t->count++;
}

void ts_table_remove(ts_table *t, ts_table_node *n) {
    for (ts_table_node **p = &t->buckets[n->key % t->n_buckets]; *p; p = &(*p)->chain)
        if (*p == n) {
            *p = n->chain;
            t->count--;
            return;
        }
}

ts_table_node *ts_table_bucket(const ts_table *t, uint64_t key) { return t->buckets[key % t->n_buckets]; }

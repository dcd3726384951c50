/* conns.c — connection deadlines and the soft limit (see conns.h). */
#include "server/http/conns.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>

struct ts_conn {
    ts_conn *prev, *next;
    int fd;
    ts_conn_phase phase;
    int over;              /* accepted beyond the soft limit */
    int expired;           /* shut down already */
    uint64_t since_us;     /* when it entered phase */
};

struct ts_conns {
    pthread_mutex_t mu;
    ts_conn *head;
    int64_t n, soft_limit;
    uint64_t head_us, body_us;
};

ts_conns *ts_conns_new(int64_t soft_limit, uint64_t head_us, uint64_t body_us) {
    ts_conns *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    pthread_mutex_init(&cs->mu, NULL);
    cs->soft_limit = soft_limit;
    cs->head_us = head_us;
    cs->body_us = body_us;
    return cs;
}

void ts_conns_free(ts_conns *cs) {
    if (!cs)
        return;
    for (ts_conn *c = cs->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pthread_mutex_destroy(&cs->mu);
    free(cs);
}

ts_conn *ts_conns_open(ts_conns *cs, int fd, uint64_t now_us) {
    ts_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->phase = TS_CONN_HEAD;
    c->since_us = now_us;
    pthread_mutex_lock(&cs->mu);
    c->over = cs->n >= cs->soft_limit;
    c->next = cs->head;
    if (cs->head)
        cs->head->prev = c;
    cs->head = c;
    cs->n++;
    pthread_mutex_unlock(&cs->mu);
    return c;
}

void ts_conns_close(ts_conns *cs, ts_conn *c) {
    if (!c)
        return;
    pthread_mutex_lock(&cs->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        cs->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    cs->n--;
    pthread_mutex_unlock(&cs->mu);
    free(c);
}

void ts_conns_phase(ts_conns *cs, ts_conn *c, ts_conn_phase phase, uint64_t now_us) {
    if (!c)
        return;
    pthread_mutex_lock(&cs->mu);
    c->phase = phase;
    c->since_us = now_us;
    pthread_mutex_unlock(&cs->mu);
}

int ts_conns_over(const ts_conn *c) { return c && c->over; }

/* The deadline of c's phase, 0 = none. */
static uint64_t limit_of(const ts_conns *cs, const ts_conn *c) {
    if (c->phase == TS_CONN_HEAD) {
        uint64_t lim = cs->head_us;
        if (c->over && (!lim || lim > TS_CONNS_OVER_HEAD_US))
            lim = TS_CONNS_OVER_HEAD_US;
        return lim;
    }
    return c->phase == TS_CONN_BODY ? cs->body_us : 0;
}

int ts_conns_expire(ts_conns *cs, uint64_t now_us) {
    int n = 0;
    pthread_mutex_lock(&cs->mu);
    for (ts_conn *c = cs->head; c; c = c->next) {
        uint64_t lim = limit_of(cs, c);
        if (c->expired || !lim || now_us <= c->since_us || now_us - c->since_us <= lim)
            continue;
        shutdown(c->fd, SHUT_RDWR); /* the fd is open while c is registered (conns.h) */
        c->expired = 1;
        n++;
    }
    pthread_mutex_unlock(&cs->mu);
    return n;
}

int64_t ts_conns_count(ts_conns *cs) {
    pthread_mutex_lock(&cs->mu);
    int64_t n = cs->n;
    pthread_mutex_unlock(&cs->mu);
    return n;
}

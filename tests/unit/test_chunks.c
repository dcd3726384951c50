/* test_chunks.c — messages split below a NATS server's max_payload and put together again
 * (server/repl/chunks.h): published states and admin messages of a model larger than 1 MiB. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "server/repl/chunks.h"
#include "testutil.h"

START_TEST(test_room_and_count) {
    ck_assert_uint_eq(ts_chunk_room(0), 1024 * 1024 - 16384);       /* unknown: the default 1 MiB */
    ck_assert_uint_eq(ts_chunk_room(8 * 1024 * 1024), 8 * 1024 * 1024 - 16384);
    ck_assert_uint_eq(ts_chunk_room(1024), 512);                    /* small: half for the headers */
    ck_assert_int_eq(ts_chunk_count(0, 512), 1);
    ck_assert_int_eq(ts_chunk_count(512, 512), 1);
    ck_assert_int_eq(ts_chunk_count(513, 512), 2);
    ck_assert_int_eq(ts_chunk_count(3 * 1024 * 1024, ts_chunk_room(0)), 4);
}
END_TEST

START_TEST(test_format_parse) {
    char text[32];
    int i, n;
    ts_chunk_format(2, 5, text, sizeof text);
    ck_assert_str_eq(text, "2/5");
    ck_assert_int_eq(ts_chunk_parse(text, &i, &n), 0);
    ck_assert_int_eq(i, 2);
    ck_assert_int_eq(n, 5);
    const char *bad[] = {NULL, "", "3", "5/5", "-1/2", "1/2x", "a/b"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        ck_assert_msg(ts_chunk_parse(bad[k], &i, &n) == -1, "'%s' parsed", bad[k] ? bad[k] : "(null)");
}
END_TEST

/* Split a message, put it together again; a missing chunk drops it, a new first chunk starts over. */
START_TEST(test_split_and_assemble) {
    size_t len = 5000, room = ts_chunk_room(1024), got = 0;
    uint8_t *msg = malloc(len);
    for (size_t k = 0; k < len; k++)
        msg[k] = (uint8_t)(k * 7);
    int n = ts_chunk_count(len, room);
    ck_assert_int_eq(n, 10);
    ts_chunks c = {0};
    ts_chunks_begin(&c, n);
    for (int i = 0; i < n; i++) {
        size_t off = (size_t)i * room, part = len - off < room ? len - off : room;
        ck_assert_int_eq(ts_chunks_add(&c, i, msg + off, part), i == n - 1);
    }
    uint8_t *out = ts_chunks_take(&c, &got);
    ck_assert_uint_eq(got, len);
    ck_assert_int_eq(memcmp(out, msg, len), 0);
    free(out);
    /* Chunk 1 missing: chunk 2 drops the message, and nothing completes without a restart. */
    ts_chunks_begin(&c, 3);
    ck_assert_int_eq(ts_chunks_add(&c, 0, msg, 10), 0);
    ck_assert_int_eq(ts_chunks_add(&c, 2, msg, 10), -1);
    ck_assert_int_eq(ts_chunks_add(&c, 1, msg, 10), -1);
    /* An empty message (a delete) is one empty chunk. */
    ts_chunks_begin(&c, 1);
    ck_assert_int_eq(ts_chunks_add(&c, 0, NULL, 0), 1);
    out = ts_chunks_take(&c, &got);
    ck_assert_uint_eq(got, 0);
    free(out);
    ts_chunks_free(&c);
    free(msg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("chunks");
    TCase *tc = tcase_create("chunks");
    tcase_add_test(tc, test_room_and_count);
    tcase_add_test(tc, test_format_parse);
    tcase_add_test(tc, test_split_and_assemble);
    suite_add_tcase(s, tc);
    return run_suite(s);
}

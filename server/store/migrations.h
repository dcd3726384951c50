/* migrations.h — the schema migrations compiled into the binary (from the migrations/ SQL files by
 * tools/embed_sql.sh). Applied in order by ts_store_open(); the number of the last one is
 * the schema version this binary writes. */
#ifndef TS_MIGRATIONS_H
#define TS_MIGRATIONS_H

typedef struct {
    int version;        /* NNNN of migrations/NNNN_name.sql; strictly increasing */
    const char *name;   /* "NNNN_name" */
    const char *sql;    /* the file's text */
} ts_migration;

extern const ts_migration ts_migrations[];
extern const int ts_migrations_count;

#endif

-- sqlstream catalog and checkpoint store (DESIGN §6).
-- Applied once by sqlstream.checkpoint.migrations; later changes go in V002__*.sql, ...

CREATE SCHEMA IF NOT EXISTS sqlstream;
-- One Postgres table per stateful operator lives here (registered in sqlstream.operator_state).
CREATE SCHEMA IF NOT EXISTS sqlstream_state;

-- Every object's definition: enough to rebuild the graph after any crash.
CREATE TABLE sqlstream.objects (
    name         text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('source', 'table', 'materialized view', 'sink')),
    sql          text NOT NULL,
    options      jsonb NOT NULL DEFAULT '{}',
    schema       jsonb NOT NULL,
    fingerprint  text NOT NULL,
    depends_on   text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per committed checkpoint (an epoch that ended with a checkpoint).
CREATE TABLE sqlstream.checkpoints (
    epoch         bigint PRIMARY KEY,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms   double precision NOT NULL,
    rows_in       bigint NOT NULL,
    rows_out      bigint NOT NULL,
    state_rows    bigint NOT NULL,
    bytes         bigint NOT NULL
);

-- Where each source reader resumes: the offset reached by the last committed checkpoint.
-- As in RisingWave, a source stores nothing itself: every view or sink reading it has its own
-- reader (`object`), so a view created later reads the source from its beginning.
CREATE TABLE sqlstream.source_offsets (
    object     text NOT NULL,
    source     text NOT NULL,
    partition  text NOT NULL,
    "offset"   jsonb NOT NULL,
    epoch      bigint NOT NULL,
    PRIMARY KEY (object, source, partition)
);

-- Each reader's watermark at the last committed checkpoint ('infinity' once a bounded source
-- is exhausted, which closes every window).
CREATE TABLE sqlstream.watermarks (
    object     text NOT NULL,
    source     text NOT NULL,
    watermark  timestamp NOT NULL,
    epoch      bigint NOT NULL,
    PRIMARY KEY (object, source)
);

-- Sink commit markers: the epochs a sink's output belongs to, recorded in the checkpoint
-- transaction (the decision of the two-phase protocol).
CREATE TABLE sqlstream.sink_commits (
    sink          text NOT NULL,
    epoch         bigint NOT NULL,
    rows          bigint NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, epoch)
);

-- Registry of operator state tables (schema sqlstream_state).
CREATE TABLE sqlstream.operator_state (
    operator     text PRIMARY KEY,
    object       text NOT NULL,
    kind         text NOT NULL,
    state_table  text NOT NULL,
    schema       jsonb NOT NULL,
    fingerprint  text NOT NULL
);

-- Records that could not be decoded, committed with the epoch that read them.
CREATE TABLE sqlstream.dead_letters (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    partition   text NOT NULL,
    "offset"    jsonb,
    raw         bytea,
    reason      text NOT NULL,
    epoch       bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

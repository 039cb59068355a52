-- The runner's store: batches, items (one submit each), images, the cached access token, and an
-- event history for `status`, reports and metrics. Times are Unix milliseconds.

CREATE TABLE batches (
    name          TEXT PRIMARY KEY NOT NULL,
    review_policy TEXT NOT NULL CHECK (review_policy IN ('keep', 'skip')),
    block_policy  TEXT NOT NULL CHECK (block_policy IN ('keep', 'skip')),
    source        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE items (
    key             TEXT PRIMARY KEY NOT NULL,
    batch           TEXT NOT NULL REFERENCES batches (name),
    seq             INTEGER NOT NULL,
    prompt          TEXT NOT NULL,
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    version         TEXT NOT NULL,
    image_num       INTEGER NOT NULL,
    variant         INTEGER NOT NULL,
    tags            TEXT NOT NULL,
    vars            TEXT NOT NULL,
    template        TEXT,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'submitting', 'running', 'fetching', 'done', 'failed')),
    task_id         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    retry_at        INTEGER,
    ambiguous       INTEGER NOT NULL DEFAULT 0,
    error_class     TEXT,
    error_code      INTEGER,
    error_msg       TEXT,
    created_at      INTEGER NOT NULL,
    submitted_at    INTEGER,
    finished_at     INTEGER,
    done_at         INTEGER,
    updated_at      INTEGER NOT NULL
);

CREATE INDEX items_by_state ON items (state, batch, seq);

CREATE TABLE images (
    item_key        TEXT NOT NULL REFERENCES items (key),
    idx             INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('listed', 'archived', 'skipped', 'lost')),
    verdict         TEXT NOT NULL CHECK (verdict IN ('pass', 'review', 'block')),
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    url             TEXT,
    url_expires_at  INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    path            TEXT,
    sha256          TEXT,
    bytes           INTEGER,
    listed_at       INTEGER NOT NULL,
    archived_at     INTEGER,
    slack_ms        INTEGER,
    error           TEXT,
    PRIMARY KEY (item_key, idx)
);

CREATE INDEX images_by_state ON images (state, url_expires_at);

-- One row: the access token fetched with EB_AK/EB_SK, for the base URL and key it was fetched
-- with. The secret key is never stored.
CREATE TABLE token_cache (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    base_url      TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    access_token  TEXT NOT NULL,
    expires_at    INTEGER NOT NULL
);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    batch     TEXT,
    item_key  TEXT,
    kind      TEXT NOT NULL,
    code      INTEGER,
    detail    TEXT
);

CREATE INDEX events_by_kind ON events (kind, at);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    command     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    exit_code   INTEGER,
    summary     TEXT
);

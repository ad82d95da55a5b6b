"""Arrow schemas of the data contracts (DESIGN.md §3)."""
import pyarrow as pa

INTERACTIONS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("rating", pa.float32()),
    pa.field("review", pa.string()),
])

ITEMS = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("brand", pa.string()),
    pa.field("price", pa.float32()),
    pa.field("image_uri", pa.string()),
])

# Sampled candidate lists for direct recommendation: one positive and never-seen negatives per user.
CANDIDATES = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("positive", pa.string(), nullable=False),
    pa.field("negatives", pa.list_(pa.string()), nullable=False),
])

REQUIRED = {"interactions": ("user_id", "item_id"), "items": ("item_id",)}


def conform(table: pa.Table, schema: pa.Schema, source: str, required: tuple[str, ...] | None = None) -> pa.Table:
    """Cast ``table`` to ``schema``: required columns must exist, optional ones are filled with nulls.

    ``required`` defaults to the contract's (interactions: user_id, item_id, ts; items: item_id).
    Raises ValueError naming the source and the field on a missing required column or a failed cast.
    """
    if required is None:
        kind = "interactions" if schema is INTERACTIONS else "items"
        required = REQUIRED.get(kind, ()) + (("ts",) if schema is INTERACTIONS else ())
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; found {table.column_names}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(len(table), field.type))
            continue
        col = table.column(field.name)
        try:
            col = col if col.type == field.type else col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{source}: column {field.name!r} cannot be read as {field.type}: {e}") from e
        if not field.nullable and col.null_count:
            first = col.is_null().to_numpy(zero_copy_only=False).nonzero()[0][0]
            raise ValueError(f"{source}: column {field.name!r} has {col.null_count} null value(s), "
                             f"first at row {first}")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)

TASKS = ("sequential", "direct", "ctr", "explain")

# One row per user to score. ``history`` (item ids, oldest first) extends DESIGN §3: each request carries the
# evidence it is scored on, so the job streams without a join; null means an unknown user.
REQUESTS = pa.schema([
    pa.field("user_id", pa.string()),
    pa.field("task", pa.string()),
    pa.field("candidates", pa.list_(pa.string())),  # null: retrieve from the full catalogue
    pa.field("k", pa.int32()),
    pa.field("history", pa.list_(pa.string())),
    # explain: the item to explain and the user's star rating of it (1-5); null for the other tasks.
    pa.field("item_id", pa.string()),
    pa.field("rating", pa.float32()),
])
REQUIRED_REQUEST_COLUMNS = ("user_id", "task", "k")

RANKED = pa.list_(pa.struct([pa.field("item_id", pa.string()), pa.field("score", pa.float32())]))

RESULTS = pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("user_id", pa.string()),
    pa.field("task", pa.string()),
    pa.field("route", pa.string()),
    pa.field("horizon", pa.float32()),
    pa.field("confidence", pa.float32()),
    pa.field("ranked", RANKED),
    pa.field("tools", pa.list_(pa.string())),
    pa.field("trace", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("latency_ms", pa.float32()),
    # What the planner did (reasonrec.planner): who answered, and the opinions it weighed.
    pa.field("path", pa.string()),  # tool / vote / vlm / aggregate
    pa.field("vlm_called", pa.bool_()),
    pa.field("escalated", pa.bool_()),  # a medium row sent on to the tools for low VLM confidence
    pa.field("overrode", pa.bool_()),  # the VLM's top won against the tools' vote
    pa.field("vlm_top", pa.string()),
    pa.field("tools_top", pa.string()),
    pa.field("item_id", pa.string()),  # explain: the explained item (the request's); null for the other tasks
    pa.field("text", pa.string()),  # explain: the generated explanation (greedy); null for the other tasks
])

QUARANTINE = pa.schema([
    pa.field("input", pa.string()),  # the input row as JSON text
    pa.field("source", pa.string()),  # shard URI and row number
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("run_id", pa.string()),
])

"""Arm 5's Spark comparison: the aggregate metrics of docs/aggregates.md in
Spark local mode, over the events `clickstream bench` exported to CSV.

    python3 aggregate.py EVENTS.csv OUT.csv WINDOW_MS SESSION_TIMEOUT_MS

Writes the rows (window_start_ms, url, country, clicks, unique_users,
time_spent_total_ms, time_spent_samples) to OUT.csv and prints one JSON line
with the timings: start-up (SparkSession) and the aggregation (read, compute,
collect) separately.
"""
import csv
import json
import sys
import time

t0 = time.time()
from pyspark.sql import SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import LongType, StringType, StructField, StructType  # noqa: E402

events_csv, out_csv, window_ms, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spark = (
    SparkSession.builder.master("local[*]")
    .appName("clickstream-bench")
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .config("spark.sql.shuffle.partitions", "4")
    .config("spark.driver.memory", "2g")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
started = time.time()

schema = StructType([
    StructField("event_id", StringType()),
    StructField("user_id", StringType()),
    StructField("ts_ms", LongType()),
    StructField("url", StringType()),
    StructField("country", StringType()),
])
events = spark.read.csv(events_csv, schema=schema)
by_user = Window.partitionBy("user_id").orderBy("ts_ms", "event_id")
e = events.withColumn("next_ts", F.lead("ts_ms").over(by_user))
base = F.substring_index(F.substring_index(F.trim(F.col("url")), "#", 1), "?", 1)
e = e.withColumn("base", base).withColumn("p", F.instr(F.col("base"), "://"))
rest = F.expr("substring(base, p + 3)")
e = e.withColumn("rest", rest)
url = F.when(F.col("p") == 0, F.col("base")).otherwise(
    F.concat(
        F.lower(F.expr("substring(base, 1, p - 1)")),
        F.lit("://"),
        F.lower(F.substring_index(F.col("rest"), "/", 1)),
        F.when(F.instr(F.col("rest"), "/") > 0, F.expr("substring(rest, instr(rest, '/'))")).otherwise(F.lit("/")),
    )
)
gap = F.col("next_ts") - F.col("ts_ms")
n = e.select(
    (F.col("ts_ms") - F.pmod(F.col("ts_ms"), F.lit(window_ms))).alias("window_start_ms"),
    url.alias("url"),
    F.when(F.col("country").isNull() | (F.col("country") == ""), F.lit("unknown")).otherwise(F.col("country")).alias("country"),
    F.col("user_id"),
    F.when(gap <= timeout_ms, gap).alias("spent"),
)
rows = (
    n.groupBy("window_start_ms", "url", "country")
    .agg(
        F.count(F.lit(1)).alias("clicks"),
        F.countDistinct("user_id").alias("unique_users"),
        F.coalesce(F.sum("spent"), F.lit(0)).alias("time_spent_total_ms"),
        F.count("spent").alias("time_spent_samples"),
    )
    .collect()
)
done = time.time()
with open(out_csv, "w", newline="") as f:
    w = csv.writer(f)
    for r in rows:
        w.writerow([r.window_start_ms, r.url, r.country, r.clicks, r.unique_users, r.time_spent_total_ms, r.time_spent_samples])
spark.stop()
print(json.dumps({"startup_seconds": started - t0, "aggregate_seconds": done - started, "rows": len(rows)}))

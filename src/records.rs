//! RecordBatch v2 splicer: lands in the next commit.

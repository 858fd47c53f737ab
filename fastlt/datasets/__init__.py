"""Dataset converters: each reads one source format and hands fastlt.shards.write_shard an ImageSource."""

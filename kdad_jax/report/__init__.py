"""What a run leaves for people: ``tables`` (results tables, curve plots), ``visualize`` (heat
maps), ``logs`` (metrics.jsonl, TensorBoard, environment), ``describe`` (the resolved config)."""

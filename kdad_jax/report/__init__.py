"""What a run leaves for people: ``tables`` (results tables, curve plots), ``visualize`` (heat
maps), ``html`` (W/report.html), ``describe`` (the resolved config), ``docs_tables`` (the
documentation's tables from the runs' JSON records)."""

"""`vidt report`: tables, statistics and curves over a root of run directories."""

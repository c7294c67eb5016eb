"""Code shared by test modules (test modules never import each other): data writers, process helpers, Prefect
queries."""

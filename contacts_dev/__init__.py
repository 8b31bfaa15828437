"""Development support shared by `make run`, the tests and the benchmark: the embedded broker and
builders of the platform's records. Never imported by the service; the chart's image leaves it out."""

"""Evaluation: retrieval metrics (upstream-compatible rank counting), dual softmax, and the HTML report.

```python
from vidret.eval.metrics import retrieval_metrics, t2v_multi, v2t_multi, metrics_table
from vidret.eval.report import write_report
```
"""

"""Human-readable views of measured results: Markdown tables, plots, the HTML report."""

"""Pure segmentation core: aggregates, rules, classifier. No I/O, no clock reads."""

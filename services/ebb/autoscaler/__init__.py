"""The autoscaler: Knative's KPA over the pushed stat stream, deciding each revision's scale."""

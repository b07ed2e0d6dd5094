"""The webhook: Knative's defaulting and validation of Serving resources, over gRPC and AdmissionReview."""

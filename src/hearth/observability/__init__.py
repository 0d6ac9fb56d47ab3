"""What Hearth tells about itself: Prometheus metrics."""

"""The chart's pods as real containers: the rendered pod specs turned into exact ``docker run`` invocations."""

"""`edgeport build`: every (model, target) pair of a build file, exported in worker processes, with a
content-addressed cache, a summary, JUnit XML and the CI matrix. The build file: exporter/builder/buildfile.py;
the cache key: exporter/builder/cache.py; running and reporting: exporter/builder/runner.py."""

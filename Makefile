# Shortcuts; the scripts work without make.
.PHONY: test bench clean
test:
	scripts/test.sh
bench:
	scripts/bench.sh
clean:
	rm -rf .venv build src/*.egg-info src/burstio/*.so bench-results.png

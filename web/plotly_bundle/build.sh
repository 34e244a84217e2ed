#!/usr/bin/env bash
# Rebuilds web/assets/plotly-moe.min.js: plotly.js with only the traces the dashboard draws (1.4 MB
# instead of the full 4.8 MB bundle; the browser evaluates it in about a third of the time, which is most
# of the first chart). Dash serves it from assets/ on every page as window.Plotly, and dcc.Graph then
# uses it instead of fetching the full bundle. Keep the version equal to the plotly.js that the installed
# `plotly` Python package ships (plotly/package_data/plotly.min.js, first line); add a trace module
# below when a page starts drawing a new trace type. Needs node + npm; run from anywhere.
set -euo pipefail
VERSION="${PLOTLY_JS_VERSION:-4.1.1}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
echo '{"name":"plotly-moe","version":"1.0.0","private":true}' > package.json
npm install --ignore-scripts --no-audit --no-fund "plotly.js@$VERSION" esbuild@0.28.2 >/dev/null
cp "$HERE/entry.js" .
node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --global-name=Plotly --target=es2016 \
  --define:global=window --define:define.amd=false --alias:regl=@plotly/regl --alias:stream=stream-browserify \
  --legal-comments=none \
  --banner:js="/*! plotly.js v$VERSION, partial bundle: core (scatter), bar, candlestick, heatmap, histogram2d, parcoords. MIT License, Copyright 2012-2026 Plotly, Inc. Built by web/plotly_bundle/build.sh */" \
  --outfile="$HERE/../assets/plotly-moe.min.js"
rm -f "$HERE/../assets/plotly-moe.min.css"  # map styles of traces not in the bundle

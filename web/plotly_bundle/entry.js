// MoE Trader's plotly.js bundle: the core (scatter) and the traces the dashboard draws, nothing else
var Plotly = require('plotly.js/lib/core');
Plotly.register([
    require('plotly.js/lib/bar'),
    require('plotly.js/lib/candlestick'),
    require('plotly.js/lib/heatmap'),
    require('plotly.js/lib/histogram2d'),
    require('plotly.js/lib/parcoords'),
]);
module.exports = Plotly;

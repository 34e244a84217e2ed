"""Trade annotations: marked trades on stored candles -> versioned rows -> labelled training cases."""

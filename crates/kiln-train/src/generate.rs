//! Text generation from a trained GPT: temperature, top-k and seeded sampling, streamed.

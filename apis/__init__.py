"""What the service serves from its own models over OpenAI's protocols: the audio API
(`openai_audio`) and the Realtime API (`openai_realtime`)."""

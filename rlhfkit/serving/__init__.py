"""The pieces of the OpenAI-compatible HTTP server that ``rlhfkit serve`` runs (its routes and
its config live with the recipe):

* ``http_errors`` -- OpenAI's error shape, error handlers, request bodies read within a size limit;
* ``batching`` -- the worker thread that gathers concurrent requests into shared `generate` calls
  and streams each row's tokens as they are made;
* ``text_stream`` -- generated tokens to text chunks, never past a stop string;
* ``openai_protocol`` -- request parameters and chat messages checked, log-probs and stream
  chunks shaped as OpenAI's API has them;
* ``prompt_limits`` -- the model's context, and prompts checked and tokenised within it.
"""

"""``volumed kms serve``: the keystore served over AWS KMS's own protocol (JSON 1.1, SigV4, TLS).

The top of the key service: ``app`` (the ASGI application), ``serve`` (the process), ``commit``
(group commit on the keystore), ``sigv4``/``accesskeys`` (authentication), ``wire`` (JSON <-> boto3
parameters), ``tls``, ``ratelimit``, ``errors``, and ``remote`` (what a client of the server uses
beside boto3). It calls the embedded service (volumed.kms.service) as the authenticated principal.
"""

"""What the embedded key service keeps on disk: the keystore directory and its SQLite database
(``keystore``), the root key and the wrapping of key material (``rootkey``), grants and grant
tokens (``grantstore``), identity policies (``iamstore``) and the ciphertext blob format
(``blob``). Formats: docs/KMS.md. Uses volumed.kms.audit (schema, sealing) and
volumed.kms.policy (the decision cache); used by volumed.kms.ops and the service.
"""

import logging

from actors.api_keys import generate_key
from config import logs


def test_log_lines_keep_the_key_prefix_and_lose_every_secret(caplog):
    logs.install()
    plaintext, parsed = generate_key()
    logger = logging.getLogger("neuroapi.test")
    with caplog.at_level(logging.INFO):
        logger.info("key %s used", plaintext)
        logger.info("headers {'authorization': 'Bearer %s', 'x-api-key': 'sk-ant-api03-abcdefghijkl'}", plaintext)
        logger.warning("upstream said: Incorrect API key provided: sk-proj-abcdefghijklmnop")
    text = caplog.text
    assert parsed.secret not in text and "abcdefghijkl" not in text
    assert parsed.prefix in text  # the public id stays, for support


def test_install_is_idempotent():
    logs.install()
    factory = logging.getLogRecordFactory()
    logs.install()
    assert logging.getLogRecordFactory() is factory

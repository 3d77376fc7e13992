"""mindpet_lite.integrations"""

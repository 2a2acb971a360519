"""accelerated"""
